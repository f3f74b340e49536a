"""Web-free input decoding and output encoding: uploads -> `Volume`; masks -> NIfTI and PNG.

Import the submodules (`service.io.decode`, `service.io.encode`): this package imports nothing
itself, so that the API can import one side without the other's dependencies.
"""
