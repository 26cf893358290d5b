"""One module per inference runtime; :data:`shufflenet.deploy.backends.RUNTIMES` names them all."""
