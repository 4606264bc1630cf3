
CREATE TABLE IF NOT EXISTS public.campaign_notifier_leaders (
    role text PRIMARY KEY,
    owner int4 NOT NULL,
    since timestamptz NOT NULL DEFAULT now()
);
