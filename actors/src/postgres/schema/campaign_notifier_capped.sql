
CREATE TABLE IF NOT EXISTS public.campaign_notifier_capped (
    restaurant_id text,
    adv_campaign_id text,
    client_id text,
    reason text NOT NULL,
    capped_at int8 NOT NULL,
    PRIMARY KEY (restaurant_id, adv_campaign_id, client_id)
);
