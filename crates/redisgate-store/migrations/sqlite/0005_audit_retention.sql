-- Retention deletes the oldest entries of every organization at once: by time alone.
CREATE INDEX audit_logs_created ON audit_logs (created_at);
