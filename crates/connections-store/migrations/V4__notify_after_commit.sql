-- A NOTIFY inside the appending transaction serializes every such commit on
-- the server's notification-queue lock, held through the WAL flush: group
-- commit stops working and concurrent appends queue up. The command handler
-- now sends pg_notify right after COMMIT, in its own (xid-less) transaction.
DROP TRIGGER events_notify ON events;
DROP FUNCTION events_notify();
