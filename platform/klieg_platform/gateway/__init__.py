"""The HTTP gateway: a Starlette app speaking the fal-style protocol, plus the admin API."""
