"""gp_pipelines"""
