"""PostgreSQL wire protocol: messages, codec and value codecs (pure, no sockets)."""
