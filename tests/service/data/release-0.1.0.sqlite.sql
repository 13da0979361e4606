PRAGMA foreign_keys=OFF;
BEGIN TRANSACTION;
CREATE TABLE atelier_schema_versions (
	component VARCHAR(64) NOT NULL, 
	version INTEGER NOT NULL, 
	PRIMARY KEY (component)
);
INSERT INTO atelier_schema_versions VALUES('jobs',1);
INSERT INTO atelier_schema_versions VALUES('ledger',1);
INSERT INTO atelier_schema_versions VALUES('registry',1);
INSERT INTO atelier_schema_versions VALUES('settings',1);
INSERT INTO atelier_schema_versions VALUES('api_keys',1);
INSERT INTO atelier_schema_versions VALUES('webhooks',1);
CREATE TABLE jobs (
	seq INTEGER NOT NULL, 
	id VARCHAR(64) NOT NULL, 
	kind VARCHAR(16) NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	priority INTEGER NOT NULL, 
	payload JSON NOT NULL, 
	result JSON, 
	error TEXT, 
	owner VARCHAR(200), 
	attempts INTEGER NOT NULL, 
	max_attempts INTEGER NOT NULL, 
	progress_step INTEGER, 
	progress_total INTEGER, 
	progress_info JSON NOT NULL, 
	cancel_requested BOOLEAN NOT NULL, 
	worker_id VARCHAR(200), 
	lease_expires_at DATETIME, 
	created_at DATETIME NOT NULL, 
	started_at DATETIME, 
	finished_at DATETIME, 
	webhook_url TEXT, 
	PRIMARY KEY (seq), 
	UNIQUE (id)
);
INSERT INTO jobs VALUES(1,'release-job-1','generate','queued',0,'{"request": {"prompt": "a red shoe"}, "model": "shoes-v1"}',NULL,NULL,'alice',0,3,NULL,NULL,'{}',0,NULL,NULL,'2026-12-07 10:39:46.329205',NULL,NULL,'https://example.com/hook');
CREATE TABLE processed_objects (
	bucket VARCHAR(64) NOT NULL, 
	"key" VARCHAR(1024) NOT NULL, 
	version VARCHAR(256) NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	error TEXT, 
	worker_id VARCHAR(200), 
	claimed_at DATETIME NOT NULL, 
	finished_at DATETIME, 
	PRIMARY KEY (bucket, "key", version)
);
INSERT INTO processed_objects VALUES('models','models/shoes-v1.safetensors','v1','done',NULL,'watcher','2026-12-07 10:39:46.343437','2026-12-07 10:39:46.345650');
CREATE TABLE registered_models (
	kind VARCHAR(16) NOT NULL, 
	name VARCHAR(255) NOT NULL, 
	storage_key VARCHAR(1024) NOT NULL, 
	is_folder BOOLEAN NOT NULL, 
	architecture VARCHAR(32) NOT NULL, 
	family VARCHAR(16) NOT NULL, 
	sha256 VARCHAR(64) NOT NULL, 
	lora_hash VARCHAR(64), 
	size BIGINT NOT NULL, 
	version VARCHAR(256) NOT NULL, 
	source VARCHAR(16) NOT NULL, 
	label VARCHAR(255), 
	details JSON NOT NULL, 
	created_at DATETIME NOT NULL, 
	updated_at DATETIME NOT NULL, 
	PRIMARY KEY (kind, name), 
	UNIQUE (storage_key)
);
INSERT INTO registered_models VALUES('checkpoint','shoes-v1','models/shoes-v1.safetensors',0,'sd15','sd15','abababababababababababababababababababababababababababababababab',NULL,1234,'v1','upload',NULL,'{}','2026-12-07 10:39:46.337572','2026-12-07 10:39:46.337572');
CREATE TABLE studio_settings (
	"key" VARCHAR(128) NOT NULL, 
	value JSON NOT NULL, 
	updated_at DATETIME NOT NULL, 
	PRIMARY KEY ("key")
);
INSERT INTO studio_settings VALUES('sd_model_checkpoint','"shoes-v1"','2026-12-07 10:39:46.341841');
CREATE TABLE api_keys (
	name VARCHAR(100) NOT NULL, 
	key_hash VARCHAR(64) NOT NULL, 
	hint VARCHAR(16) NOT NULL, 
	created_at DATETIME NOT NULL, 
	revoked_at DATETIME, 
	PRIMARY KEY (name), 
	UNIQUE (key_hash)
);
INSERT INTO api_keys VALUES('alice','8df1d7d5ba46eaac1e27b3c7c83b2bc1f55bbb30e71eaf18e1ff2f23bb9df7e3','atk_vjTZ','2026-12-07 10:39:46.336172',NULL);
CREATE TABLE webhook_deliveries (
	job_id VARCHAR(64) NOT NULL, 
	url TEXT NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	attempts INTEGER NOT NULL, 
	next_attempt_at DATETIME NOT NULL, 
	last_status INTEGER, 
	last_error TEXT, 
	created_at DATETIME NOT NULL, 
	delivered_at DATETIME, 
	PRIMARY KEY (job_id)
);
INSERT INTO webhook_deliveries VALUES('release-job-1','https://example.com/hook','waiting',0,'2026-12-07 10:39:46.334236',NULL,NULL,'2026-12-07 10:39:46.334236',NULL);
CREATE INDEX ix_jobs_created ON jobs (created_at);
CREATE INDEX ix_jobs_lease ON jobs (state, lease_expires_at);
CREATE INDEX ix_jobs_queue_order ON jobs (state, priority, created_at, seq);
CREATE INDEX ix_processed_objects_claimed ON processed_objects (claimed_at);
CREATE INDEX ix_processed_objects_state ON processed_objects (state);
CREATE INDEX ix_webhook_deliveries_due ON webhook_deliveries (state, next_attempt_at);
COMMIT;
