"""The HTTP gateway: chat front ends reach chatlog over a versioned JSON API.

What is the gateway? A browser or a mobile app cannot speak Kafka, and must not be
trusted to say which user it is. The gateway is an ASGI application (`chatlog serve`)
that authenticates each request (a user's bearer JWT, or a back end's API key acting for
a user of its tenant), takes the user from the credential (never from a body or a path),
and calls `AsyncChatLog` for that user. Its parts:

- `chatlog.gateway.principals`: who a request is (user, service acting for a user,
  operator), found from its credentials by one rule;
- `chatlog.gateway.tokens`: checking and minting the JWTs (PyJWT; HS256, or RS256/ES256
  from a JWKS; no web framework);
- `chatlog.gateway.api_keys`: the service and operator API keys, stored hashed in a file;
- `chatlog.gateway.http_errors`: the one table from chatlog's errors to HTTP answers;
- `chatlog.gateway.redis_ratelimit`: request rates per user and tenant, buckets in Redis;
- `chatlog.gateway.fastapi_limits`: those rates as a FastAPI dependency;
- `chatlog.gateway.live_events`: what a session's live stream sends (pure);
- `chatlog.gateway.fastapi_app`: the application and the session routes, on FastAPI;
  beside it, in modules of their own, `fastapi_live` (the live stream),
  `fastapi_lifecycle` (closing and erasing a session) and `fastapi_me` (erase me,
  export me). Only the `fastapi_*` modules import FastAPI;
- `chatlog.gateway.fastapi_page`: the chat page at ``/`` (``static/``) and, with
  ``chatlog serve --dev`` only, its development login ``POST /dev/token``;
- `chatlog.gateway.bots`: the stand-in bots of development mode (``--bot echo``).

The routes and the tokens need the ``server`` extra (``pip install
'chatlog-memory[server]'``); the API keys need nothing more (``chatlog apikey`` runs
without it). Nothing here is imported by ``import chatlog``.
"""
