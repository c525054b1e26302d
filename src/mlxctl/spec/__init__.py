"""The stack files as written: schema, loader (file:line errors, did-you-mean) and secret
references.
"""
