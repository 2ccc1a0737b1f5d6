"""The HTTP gateway: chat front ends reach chatlog over a versioned JSON API.

What is the gateway? A browser or a mobile app cannot speak Kafka, and must not be
trusted to say which user it is. The gateway is an ASGI application (`chatlog serve`)
that authenticates each request with a bearer JWT, takes the user from the token's
``sub`` (never from a body or a path), and calls `AsyncChatLog` for that user. Its parts:

- `chatlog.gateway.tokens`: checking and minting the JWTs (PyJWT; no web framework);
- `chatlog.gateway.http_errors`: the one table from chatlog's errors to HTTP answers;
- `chatlog.gateway.live_events`: what a session's live stream sends (pure);
- `chatlog.gateway.fastapi_app`: the application and the session routes, on FastAPI;
  beside it, in modules of their own, `fastapi_live` (the live stream),
  `fastapi_lifecycle` (closing and erasing a session) and `fastapi_me` (erase me,
  export me). Only the `fastapi_*` modules import FastAPI.

It needs the ``server`` extra (``pip install 'chatlog-memory[server]'``); nothing here is
imported by ``import chatlog``.
"""
