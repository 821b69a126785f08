"""Where datasets and caches live: a local folder or an S3 bucket, behind one small interface.

``base`` declares the interface, ``local`` and ``s3`` implement it,
``settings`` reads a dataset's ``type``/``aws_*`` keys, and ``datasets``
gives the storages a configured dataset uses.
"""
