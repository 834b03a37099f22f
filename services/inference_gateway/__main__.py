"""`python -m services.inference_gateway`: run the inference gateway (see main.main)."""

from services.inference_gateway.main import main

if __name__ == "__main__":
    raise SystemExit(main())
