"""The ``tasklight`` console command: a plain HTTP and WebSocket client of the
REST API and the /ws/ protocol (docs/cli.md).

It never imports Django or the ``tasklight`` project package: it runs
anywhere httpx and websockets are installed, against any Tasklight server.
"""

__version__ = "0.1.0"
