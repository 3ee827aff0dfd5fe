"""`python3 -m faas.runtime` (`python3 -m faas_runtime` in an image): serve the handler."""

from .server import main

if __name__ == "__main__":
    raise SystemExit(main())
