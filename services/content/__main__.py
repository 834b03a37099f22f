"""`python -m services.content`: run the content service."""

from services.content.main import main

if __name__ == "__main__":
    raise SystemExit(main())
