
CREATE TABLE IF NOT EXISTS public.campaign_notifier_outbox (
    id bigserial PRIMARY KEY,
    token int8 NOT NULL UNIQUE,
    owner int4 NOT NULL,
    feedback_ids int4[] NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
