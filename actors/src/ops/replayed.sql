CREATE TABLE IF NOT EXISTS public.campaign_notifier_replayed (
    topic text NOT NULL,
    partition int4 NOT NULL,
    "offset" int8 NOT NULL,
    reason text NOT NULL,
    replayed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition, "offset")
);
