
CREATE TABLE IF NOT EXISTS public.campaign_notifier_feed (
    name text PRIMARY KEY,
    last_id int8 NOT NULL,
    table_filenode int8,
    updated_at timestamptz NOT NULL DEFAULT now()
);
