"""The gateway's routes, one module per resource. Each module's add_routes(routes, gw)
adds its handlers to the app's route table; gateway/app.py calls them in order."""
