"""Campaign tools built on generated images: the ad composer and the contact sheet.

* :mod:`atelier.campaign.ad`: ``compose_ad(spec, out_dir)`` renders an ad spec into a PNG per channel,
  an animated GIF and (with ffmpeg) an MP4.
* :mod:`atelier.campaign.templates`: ad layouts as TOML data (built-ins: hero, split, frame, mosaic).
* :mod:`atelier.campaign.text`: bundled fonts and text that wraps and shrinks to fit its box.
* :mod:`atelier.campaign.contact_sheet`: ``build_contact_sheet(dir)`` writes an offline HTML lookbook.
* :mod:`atelier.campaign.product`: ``product_shots(photo, backend, scene)`` cuts a product out, generates a
  scene around it (the product's pixels exact), adds a shadow, expands to channels and upscales.

Nothing here needs torch; the submodules are imported on demand so the CLI stays quick.
"""
