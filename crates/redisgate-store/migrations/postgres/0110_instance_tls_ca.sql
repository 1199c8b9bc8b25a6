-- An external instance's own CA (PEM) for verifying its rediss:// server; NULL: the
-- platform's roots. Public data, so not sealed like the URL.
ALTER TABLE redis_instances ADD COLUMN tls_ca_pem TEXT;
