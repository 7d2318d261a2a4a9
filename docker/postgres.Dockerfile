# Postgres 15 with wal2json and logical decoding on.  Build from the repository root:
#   docker build -f docker/postgres.Dockerfile -t relay-postgres:15 .
# The test suite uses this tag through testcontainers when a Docker engine is available.
FROM postgres:15

# The official image already has the apt.postgresql.org repository configured.
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql-15-wal2json \
 && rm -rf /var/lib/apt/lists/*

# max_slot_wal_keep_size bounds the WAL a stopped relay's slot can hold (-1 = unlimited).
CMD ["postgres", \
     "-c", "wal_level=logical", \
     "-c", "max_replication_slots=20", \
     "-c", "max_wal_senders=20", \
     "-c", "max_slot_wal_keep_size=4GB"]
