DROP TABLE version_files;
DROP TABLE module_versions;
DROP TABLE modules;
