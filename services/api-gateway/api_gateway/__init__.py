"""The API gateway: the registry's only public face."""
