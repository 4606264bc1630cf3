
CREATE SEQUENCE IF NOT EXISTS public.campaign_notifier_owner_seq AS int4 MINVALUE 1;
