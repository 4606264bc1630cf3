
CREATE TABLE IF NOT EXISTS public.campaign_notifier_owners (
    owner int4 PRIMARY KEY,
    host text NOT NULL,
    pid int4 NOT NULL,
    input_topic text NOT NULL,
    partitions int4[] NOT NULL DEFAULT '{}',
    started_at timestamptz NOT NULL DEFAULT now(),
    renewed_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    clock_offset_ms int8 NOT NULL DEFAULT 0,
    settle_ms int8 NOT NULL,
    fenced_at timestamptz,
    fenced_by int4,
    recovered_by int4
);
