"""Atelier's service layer: the durable job queue, file storage and the API built on them.

``jobs`` keeps generate/train jobs in SQLite or PostgreSQL so they survive restarts and can be shared by
several workers; ``storage`` reads and writes files in a local folder or an S3-compatible bucket; ``ledger``
remembers which uploaded objects were already processed. Nothing here imports the engine.
"""
