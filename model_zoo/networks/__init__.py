"""Network definitions; importing this package registers every architecture."""
