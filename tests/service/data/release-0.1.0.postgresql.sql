--
-- PostgreSQL database dump
--

\restrict yqFumyn66O2tWQSzNqYvr9JbrkMbAirOAYHdB1Y5tD4wed5VkIp7U2afXzfBeQh

-- Dumped from database version 15.20 (Debian 15.20-0+deb12u1)
-- Dumped by pg_dump version 15.20 (Debian 15.20-0+deb12u1)

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- Name: api_keys; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.api_keys (
    name character varying(100) NOT NULL,
    key_hash character varying(64) NOT NULL,
    hint character varying(16) NOT NULL,
    created_at timestamp with time zone NOT NULL,
    revoked_at timestamp with time zone
);


--
-- Name: atelier_schema_versions; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.atelier_schema_versions (
    component character varying(64) NOT NULL,
    version integer NOT NULL
);


--
-- Name: jobs; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.jobs (
    seq bigint NOT NULL,
    id character varying(64) NOT NULL,
    kind character varying(16) NOT NULL,
    state character varying(16) NOT NULL,
    priority integer NOT NULL,
    payload json NOT NULL,
    result json,
    error text,
    owner character varying(200),
    attempts integer NOT NULL,
    max_attempts integer NOT NULL,
    progress_step integer,
    progress_total integer,
    progress_info json NOT NULL,
    cancel_requested boolean NOT NULL,
    worker_id character varying(200),
    lease_expires_at timestamp with time zone,
    created_at timestamp with time zone NOT NULL,
    started_at timestamp with time zone,
    finished_at timestamp with time zone,
    webhook_url text
);


--
-- Name: jobs_seq_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.jobs_seq_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: jobs_seq_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.jobs_seq_seq OWNED BY public.jobs.seq;


--
-- Name: processed_objects; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.processed_objects (
    bucket character varying(64) NOT NULL,
    key character varying(1024) NOT NULL,
    version character varying(256) NOT NULL,
    state character varying(16) NOT NULL,
    error text,
    worker_id character varying(200),
    claimed_at timestamp with time zone NOT NULL,
    finished_at timestamp with time zone
);


--
-- Name: registered_models; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.registered_models (
    kind character varying(16) NOT NULL,
    name character varying(255) NOT NULL,
    storage_key character varying(1024) NOT NULL,
    is_folder boolean NOT NULL,
    architecture character varying(32) NOT NULL,
    family character varying(16) NOT NULL,
    sha256 character varying(64) NOT NULL,
    lora_hash character varying(64),
    size bigint NOT NULL,
    version character varying(256) NOT NULL,
    source character varying(16) NOT NULL,
    label character varying(255),
    details json NOT NULL,
    created_at timestamp with time zone NOT NULL,
    updated_at timestamp with time zone NOT NULL
);


--
-- Name: studio_settings; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.studio_settings (
    key character varying(128) NOT NULL,
    value json NOT NULL,
    updated_at timestamp with time zone NOT NULL
);


--
-- Name: webhook_deliveries; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.webhook_deliveries (
    job_id character varying(64) NOT NULL,
    url text NOT NULL,
    state character varying(16) NOT NULL,
    attempts integer NOT NULL,
    next_attempt_at timestamp with time zone NOT NULL,
    last_status integer,
    last_error text,
    created_at timestamp with time zone NOT NULL,
    delivered_at timestamp with time zone
);


--
-- Name: jobs seq; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.jobs ALTER COLUMN seq SET DEFAULT nextval('public.jobs_seq_seq'::regclass);


--
-- Data for Name: api_keys; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.api_keys VALUES ('alice', 'cab3103cc0061b9591ff55042ce53f7b6029d5af33adba9a6dceb9a432010d36', 'atk_2No4', '2026-12-07 10:39:49.945268+00', NULL);


--
-- Data for Name: atelier_schema_versions; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.atelier_schema_versions VALUES ('jobs', 1);
INSERT INTO public.atelier_schema_versions VALUES ('ledger', 1);
INSERT INTO public.atelier_schema_versions VALUES ('registry', 1);
INSERT INTO public.atelier_schema_versions VALUES ('settings', 1);
INSERT INTO public.atelier_schema_versions VALUES ('api_keys', 1);
INSERT INTO public.atelier_schema_versions VALUES ('webhooks', 1);


--
-- Data for Name: jobs; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.jobs VALUES (1, 'release-job-1', 'generate', 'queued', 0, '{"request": {"prompt": "a red shoe"}, "model": "shoes-v1"}', NULL, NULL, 'alice', 0, 3, NULL, NULL, '{}', false, NULL, NULL, '2026-12-07 10:39:49.934402+00', NULL, NULL, 'https://example.com/hook');


--
-- Data for Name: processed_objects; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.processed_objects VALUES ('models', 'models/shoes-v1.safetensors', 'v1', 'done', NULL, 'watcher', '2026-12-07 10:39:49.959129+00', '2026-12-07 10:39:49.962704+00');


--
-- Data for Name: registered_models; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.registered_models VALUES ('checkpoint', 'shoes-v1', 'models/shoes-v1.safetensors', false, 'sd15', 'sd15', 'abababababababababababababababababababababababababababababababab', NULL, 1234, 'v1', 'upload', NULL, '{}', '2026-12-07 10:39:49.948127+00', '2026-12-07 10:39:49.948127+00');


--
-- Data for Name: studio_settings; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.studio_settings VALUES ('sd_model_checkpoint', '"shoes-v1"', '2026-12-07 10:39:49.956203+00');


--
-- Data for Name: webhook_deliveries; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.webhook_deliveries VALUES ('release-job-1', 'https://example.com/hook', 'waiting', 0, '2026-12-07 10:39:49.94185+00', NULL, NULL, '2026-12-07 10:39:49.94185+00', NULL);


--
-- Name: jobs_seq_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.jobs_seq_seq', 1, true);


--
-- Name: api_keys api_keys_key_hash_key; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.api_keys
    ADD CONSTRAINT api_keys_key_hash_key UNIQUE (key_hash);


--
-- Name: api_keys api_keys_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.api_keys
    ADD CONSTRAINT api_keys_pkey PRIMARY KEY (name);


--
-- Name: atelier_schema_versions atelier_schema_versions_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.atelier_schema_versions
    ADD CONSTRAINT atelier_schema_versions_pkey PRIMARY KEY (component);


--
-- Name: jobs jobs_id_key; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.jobs
    ADD CONSTRAINT jobs_id_key UNIQUE (id);


--
-- Name: jobs jobs_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.jobs
    ADD CONSTRAINT jobs_pkey PRIMARY KEY (seq);


--
-- Name: processed_objects processed_objects_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.processed_objects
    ADD CONSTRAINT processed_objects_pkey PRIMARY KEY (bucket, key, version);


--
-- Name: registered_models registered_models_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.registered_models
    ADD CONSTRAINT registered_models_pkey PRIMARY KEY (kind, name);


--
-- Name: registered_models registered_models_storage_key_key; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.registered_models
    ADD CONSTRAINT registered_models_storage_key_key UNIQUE (storage_key);


--
-- Name: studio_settings studio_settings_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.studio_settings
    ADD CONSTRAINT studio_settings_pkey PRIMARY KEY (key);


--
-- Name: webhook_deliveries webhook_deliveries_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.webhook_deliveries
    ADD CONSTRAINT webhook_deliveries_pkey PRIMARY KEY (job_id);


--
-- Name: ix_jobs_created; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_jobs_created ON public.jobs USING btree (created_at);


--
-- Name: ix_jobs_lease; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_jobs_lease ON public.jobs USING btree (state, lease_expires_at);


--
-- Name: ix_jobs_queue_order; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_jobs_queue_order ON public.jobs USING btree (state, priority, created_at, seq);


--
-- Name: ix_processed_objects_claimed; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_processed_objects_claimed ON public.processed_objects USING btree (claimed_at);


--
-- Name: ix_processed_objects_state; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_processed_objects_state ON public.processed_objects USING btree (state);


--
-- Name: ix_webhook_deliveries_due; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_webhook_deliveries_due ON public.webhook_deliveries USING btree (state, next_attempt_at);


--
-- PostgreSQL database dump complete
--

\unrestrict yqFumyn66O2tWQSzNqYvr9JbrkMbAirOAYHdB1Y5tD4wed5VkIp7U2afXzfBeQh

