"""`python -m services.identity`: run the identity service."""

from services.identity.main import main

if __name__ == "__main__":
    raise SystemExit(main())
