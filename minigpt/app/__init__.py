"""The demo app's parts, started by app.py at the top of the repository (`streamlit run app.py`):
page (the sidebar, the prompt and the tabs), views (what each tab shows, drawn by minigpt.charts)
and training (the app's background training run). Importing them runs nothing."""
