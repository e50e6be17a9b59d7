"""sentry-lambda-extension: relays Sentry SDK traffic from a Lambda function to Sentry."""

__version__ = "0.1.0"
