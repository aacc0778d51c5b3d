"""`instructemo serve`: one trained run behind HTTP, in vLLM's classify shape and OpenAI's chat shape.

The run loads once (LoRA adapter, merged model or `stage: head` head, on the
configured backend), then uvicorn serves it until SIGTERM or Ctrl-C. On
either, uvicorn stops accepting connections, lets every accepted request
finish, and only then stops the model (see `app.create_app`).

`server.py` runs it, `app.py` holds the endpoints, `protocol.py` the request
and response shapes, `batcher.py` the dynamic batching, and `settings.py` the
options and their defaults (light: the command line reads them without fastapi).
"""
