"""The WSGI entry point for servers other than `flask --app grader serve`:

    GRADER_INSTANCE_PATH=/srv/copylab gunicorn -w 4 -b 127.0.0.1:8000 grader.service.wsgi:app
    GRADER_INSTANCE_PATH=/srv/copylab waitress-serve --listen=127.0.0.1:8000 grader.service.wsgi:app
    GRADER_INSTANCE_PATH=/srv/copylab uwsgi --http 127.0.0.1:8000 --module grader.service.wsgi:app

Importing this module builds the app, which is what a WSGI server asks of it: with production
settings the factory refuses a missing, short or placeholder secret key (ConfigError names the
reason), so no server can start the service with a weak one.
"""
from grader.service.app import create_app

app = create_app()
