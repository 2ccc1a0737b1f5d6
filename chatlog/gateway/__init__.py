"""The HTTP gateway: chat front ends reach chatlog over a versioned JSON API.

What is the gateway? A browser or a mobile app cannot speak Kafka, and must not be
trusted to say which user it is. The gateway is an ASGI application (`chatlog serve`)
that authenticates each request with a bearer JWT, takes the user from the token's
``sub`` (never from a body or a path), and calls `AsyncChatLog` for that user. Its parts:

- `chatlog.gateway.tokens`: checking and minting the JWTs (PyJWT; no web framework);
- `chatlog.gateway.http_errors`: the one table from chatlog's errors to HTTP answers;
- `chatlog.gateway.fastapi_app`: the routes, on FastAPI (as are the other ``fastapi_*``
  modules, the only ones importing it);
- `chatlog.gateway.fastapi_page`: the chat page at ``/`` (``static/``) and, with
  ``chatlog serve --dev`` only, its development login ``POST /dev/token``;
- `chatlog.gateway.bots`: the stand-in bots of development mode (``--bot echo``).

It needs the ``server`` extra (``pip install 'chatlog-memory[server]'``); nothing here is
imported by ``import chatlog``.
"""
