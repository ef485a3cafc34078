# One image for every Tasklight process: docker-compose.yml (or any
# orchestrator) gives each container its Procfile line as the command.
FROM python:3.12-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PORT=8000

WORKDIR /app

# Dependencies first: this layer is rebuilt only when they change.
# psycopg[binary] brings its own libpq, so no system packages are needed.
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .

# No collectstatic: WhiteNoise serves the static files from their source
# folders (WHITENOISE_USE_FINDERS in tasklight/settings.py).
# /app belongs to root; with a URL unset the settings create /app/data
# (TASKLIGHT_DATA_DIR's default) for their SQLite files: the user owns it.
RUN useradd --system --uid 10001 --home-dir /app tasklight \
    && install -d -o tasklight -g tasklight /app/data
USER tasklight

EXPOSE 8000

# Without a command of its own, a container runs the Procfile's web line.
CMD ["honcho", "start", "--no-prefix", "web"]
