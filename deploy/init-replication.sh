#!/bin/sh
# Run once by the official postgres image at initdb: "all" in pg_hba.conf does
# not cover replication connections, which the relays and pg_basebackup make.
echo "host replication all all trust" >> "$PGDATA/pg_hba.conf"
