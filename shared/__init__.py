"""Code shared by the registry's services: settings, data model, storage, events, errors.

Nothing here imports a service; services import from here and never from each other.
"""
