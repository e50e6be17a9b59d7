"""Developer tools for sentry-lambda-extension (local Lambda sandbox emulator)."""
