"""``python -m sentry_ext [name]``: run the extension (the layer's launcher does this)."""

import sys

from .main import run

if __name__ == "__main__":
    run(sys.argv[1] if len(sys.argv) > 1 else "sentry-lambda-extension")
