
CREATE TABLE IF NOT EXISTS public.campaign_notifier_clients (
    client_id text PRIMARY KEY,
    sent int8[] NOT NULL
);
