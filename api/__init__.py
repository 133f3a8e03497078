"""rag-serve: a thin FastAPI front end over ``rag`` (grounded question answering with page citations).

Build the app with ``api.app.create_app(settings)``; ``api.main`` is the command line.
"""
