-- Dropping the schema is not supported: it would delete every message.
SELECT 1;
