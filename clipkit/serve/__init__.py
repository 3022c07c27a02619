"""`clipkit serve`: a small local web app (classify, generate, search). Needs the `serve`
extra (fastapi, uvicorn, python-multipart); see `clipkit.serve.app`."""
