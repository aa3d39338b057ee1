DROP TABLE compile_jobs;
