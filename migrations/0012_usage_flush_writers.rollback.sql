DROP TABLE usage_flush_writers;
