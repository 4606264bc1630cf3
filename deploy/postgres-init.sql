-- Run once by the postgres image on an empty data directory (docker-entrypoint-initdb.d).
-- The two tables of the data contract, as the app that owns them creates them. campaign-notifier's
-- schema step (postgres.create_schema) also creates them when missing, with what it needs of its
-- own; what this file adds is the sample subscribers below.

CREATE TABLE IF NOT EXISTS public.subscribers_restaurants (
    id serial4 NOT NULL,
    client_id varchar NOT NULL,
    restaurant_id varchar NOT NULL,
    CONSTRAINT pk_id PRIMARY KEY (id)
);

CREATE TABLE IF NOT EXISTS public.subscribers_feedback (
    id serial4 NOT NULL,
    restaurant_id text NOT NULL,
    adv_campaign_id text NOT NULL,
    adv_campaign_content text NOT NULL,
    adv_campaign_owner text NOT NULL,
    adv_campaign_owner_contact text NOT NULL,
    adv_campaign_datetime_start int8 NOT NULL,
    adv_campaign_datetime_end int8 NOT NULL,
    datetime_created int8 NOT NULL,
    client_id text NOT NULL,
    trigger_datetime_created int4 NOT NULL,
    feedback varchar NULL,
    CONSTRAINT id_pk PRIMARY KEY (id)
);

CREATE INDEX IF NOT EXISTS subscribers_restaurants_restaurant_id_idx
    ON public.subscribers_restaurants (restaurant_id);

-- Sample subscribers: three for the restaurant of the brief's sample campaign, so that sending
-- that campaign gives three notifications, and two for another restaurant. Inserted only into an
-- empty table, so running the file again adds no duplicates.
INSERT INTO public.subscribers_restaurants (client_id, restaurant_id)
SELECT client_id, restaurant_id
FROM (VALUES
    ('023e4567-e89b-12d3-a456-426614174000', '123e4567-e89b-12d3-a456-426614174000'),
    ('023e4567-e89b-12d3-a456-426614174001', '123e4567-e89b-12d3-a456-426614174000'),
    ('023e4567-e89b-12d3-a456-426614174002', '123e4567-e89b-12d3-a456-426614174000'),
    ('023e4567-e89b-12d3-a456-426614174003', '223e4567-e89b-12d3-a456-426614174000'),
    ('023e4567-e89b-12d3-a456-426614174004', '223e4567-e89b-12d3-a456-426614174000')
) AS sample (client_id, restaurant_id)
WHERE NOT EXISTS (SELECT 1 FROM public.subscribers_restaurants);
