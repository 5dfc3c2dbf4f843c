-- Router outcomes added with the sharded node and its SIP edge handling:
-- calls refused in overload, calls a dead node left open (closed at its
-- restart), and what became of abandoned forwarding attempts whose trunk
-- replied late. Adding Enum8 values is a metadata change on 18.16 and
-- current releases alike.
ALTER TABLE calls MODIFY COLUMN disposition Enum8('answered' = 1, 'missed' = 2, 'busy' = 3, 'abandoned' = 4, 'failed' = 5, 'rejected_quarantine' = 6, 'rejected_stock' = 7, 'rejected_unknown' = 8, 'rejected_untrusted' = 9, 'timeout' = 10, 'overload' = 11, 'node_lost' = 12);
ALTER TABLE call_attempts MODIFY COLUMN outcome Enum8('answered' = 1, 'busy' = 2, 'no_answer' = 3, 'rejected' = 4, 'timeout' = 5, 'transport_error' = 6, 'canceled' = 7, 'cancelled_late' = 8, 'answered_late_released' = 9);
