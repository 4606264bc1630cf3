
CREATE TABLE IF NOT EXISTS public.campaign_notifier_campaigns (
    restaurant_id text NOT NULL,
    adv_campaign_id text NOT NULL,
    adv_campaign_content text NOT NULL,
    adv_campaign_owner text NOT NULL,
    adv_campaign_owner_contact text NOT NULL,
    adv_campaign_datetime_start int8 NOT NULL,
    adv_campaign_datetime_end int8 NOT NULL,
    datetime_created int8 NOT NULL,
    source_topic text NOT NULL,
    source_partition int4 NOT NULL,
    source_offset int8 NOT NULL,
    source_timestamp_ms int8,
    message_key bytea,
    message bytea NOT NULL,
    state text NOT NULL CHECK (state IN
        ('scheduled', 'firing', 'active', 'cancelled', 'expired', 'refused')),
    owner int4,
    fired_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    recalled_at int8,
    PRIMARY KEY (restaurant_id, adv_campaign_id)
);
CREATE INDEX IF NOT EXISTS campaign_notifier_campaigns_due_idx
    ON public.campaign_notifier_campaigns (adv_campaign_datetime_start)
    WHERE state IN ('scheduled', 'firing');
CREATE INDEX IF NOT EXISTS campaign_notifier_campaigns_recalled_idx
    ON public.campaign_notifier_campaigns (recalled_at)
    WHERE recalled_at IS NOT NULL;
