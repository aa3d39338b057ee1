DROP TABLE org_api_requests_hourly;
DROP TABLE org_usage_periods;
DROP TABLE org_quotas;
