"""One router per resource; routes import shared pieces from service.api, never each other."""
