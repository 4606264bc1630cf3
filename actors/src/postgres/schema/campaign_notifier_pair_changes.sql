
CREATE TABLE IF NOT EXISTS public.campaign_notifier_pair_changes (
    seq bigserial PRIMARY KEY,
    op text NOT NULL CHECK (op IN ('add', 'remove', 'reload')),
    restaurant_id text NOT NULL,
    client_id text NOT NULL,
    committed_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS campaign_notifier_pair_changes_committed_idx
    ON public.campaign_notifier_pair_changes (committed_at);
