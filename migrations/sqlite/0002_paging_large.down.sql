-- Reverting v2 is not supported: it would drop the counters and the large-message
-- reference counts. A v1 tablemq refuses a v2 database (upgrade tablemq instead).
SELECT 1;
